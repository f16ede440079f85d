"""Command line of run_experiment.py: presets, settings files, dotted overrides, validation and
the one-line errors (exit code 2) that bad input gets before anything is computed."""

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from draccus.utils import is_choice_type
from experiment_helpers import write_grammar_folder

from scmm.experiments import ExperimentSettings, SettingsError, cli, from_dict, main, overrides
from scmm.experiments import presets, to_dict
from scmm.models.settings import AttentionSettings, ConvSettings, RNNSettings
from scmm.schemes import UnitScalingSettings
from scmm.sweeps.definition import definition_from_dict, expand
from scmm.training.settings import AdamWSettings, SGDMSettings


def parse(*argv: str) -> ExperimentSettings:
    invocation = cli.parse(list(argv))
    assert invocation is not None
    return invocation.settings


def settings_error(*argv: str) -> str:
    with pytest.raises(SettingsError) as info:
        cli.parse(list(argv))
    return str(info.value)


# Dotted overrides ---------------------------------------------------------------------------


def test_no_arguments_is_the_default_preset() -> None:
    settings = parse()
    assert settings.preset == cli.DEFAULT_PRESET == "default"
    expected = from_dict(overrides.merge(to_dict(ExperimentSettings()), presets.preset("default")))
    expected.preset = "default"
    assert settings == expected
    assert settings.model.hidden_size == 128 and settings.model.depth == 4
    assert settings.training.steps == 2000


def test_dotted_overrides_set_nested_fields_with_their_types() -> None:
    settings = parse(
        "--model.hidden_size",
        "256",
        "--model.sequence.heads",
        "4",
        "--training.optimiser.learning_rate",
        "0.004",
        "--execution.xla=false",
        "--metadata.name=my run",
        "--metadata.tags",
        "[a, b]",
        "--seed",
        "7",
    )
    assert settings.model.hidden_size == 256
    assert isinstance(settings.model.sequence, AttentionSettings)
    assert settings.model.sequence.heads == 4
    assert settings.training.optimiser.learning_rate == 0.004
    assert settings.execution.xla is False
    assert settings.metadata.name == "my run"
    assert settings.metadata.tags == ["a", "b"]
    assert settings.seed == 7
    # Untouched fields keep the preset's values.
    assert settings.model.depth == 4
    assert isinstance(settings.training.optimiser, AdamWSettings)


def test_equals_form_and_space_form_agree() -> None:
    assert parse("--model.depth=3", "--data.path=some/folder") == parse(
        "--model.depth", "3", "--data.path", "some/folder"
    )
    assert parse("--metadata.notes=a=b").metadata.notes == "a=b"  # only the first "=" splits


def test_yaml_1_1_words_stay_text_on_the_command_line() -> None:
    settings = parse("--output.wandb", "off", "--metadata.name", "yes")
    assert settings.output.wandb == "off"
    assert settings.metadata.name == "yes"
    assert parse("--output.wandb=off").output.wandb == "off"
    assert parse("--output.keep_best", "false").output.keep_best is False
    assert parse("--seed", "null").seed is None


def test_overrides_are_found_by_name_wherever_they_are() -> None:
    # The one scanner both command lines use: dotted paths and top-level fields are overrides;
    # everything else (own options, their values, positionals) stays, in order.
    argv = ["smoke", "--seed", "5", "--out=x", "--model.depth=2", "--dry-run", "--w", "2"]
    own, pairs = overrides.split_overrides(argv)
    assert own == ["smoke", "--out=x", "--dry-run", "--w", "2"]
    assert pairs == [("seed", "5"), ("model.depth", "2")]
    # A value is the next token, whatever it looks like; --preset is a run option, not a field.
    assert overrides.split_overrides(["--training.loss_scale", "-1", "--preset", "p"]) == (
        ["--preset", "p"],
        [("training.loss_scale", "-1")],
    )


def test_one_layer_of_overrides_does_not_depend_on_order() -> None:
    pairs = [("model.sequence.groups", 4), ("model.sequence.type", "conv"), ("seed", 1)]
    tree = overrides.overrides_to_tree(pairs)
    assert tree == overrides.overrides_to_tree(reversed(pairs))
    assert tree == {"model": {"sequence": {"groups": 4, "type": "conv"}}, "seed": 1}
    assert parse("--model.sequence.groups", "4", "--model.sequence.type", "conv") == parse(
        "--model.sequence.type", "conv", "--model.sequence.groups", "4"
    )
    preset_value = {"x": 1}
    overrides.overrides_to_tree([("a.b", preset_value), ("a.b.y", 2)])
    assert preset_value == {"x": 1}  # the caller's value is copied, never written into


# Choice nodes -------------------------------------------------------------------------------


def test_choice_switch_to_conv_drops_the_attention_fields() -> None:
    settings = parse("--model.sequence.type", "conv", "--model.sequence.groups", "4")
    assert isinstance(settings.model.sequence, ConvSettings)
    assert settings.model.sequence.groups == 4
    assert settings.model.sequence.kernel_size == ConvSettings().kernel_size
    settings.validate()


def test_choice_switch_optimiser_to_sgdm() -> None:
    settings = parse("--training.optimiser.type", "sgdm", "--training.optimiser.momentum", "0.5")
    assert isinstance(settings.training.optimiser, SGDMSettings)
    assert settings.training.optimiser.momentum == 0.5
    # Same type again keeps the preset's fields (no reset).
    same = parse("--training.optimiser.type", "adamw", "--training.optimiser.beta1", "0.8")
    assert isinstance(same.training.optimiser, AdamWSettings)
    assert same.training.optimiser.learning_rate == 2**-9  # the default preset's
    assert same.training.optimiser.beta1 == 0.8


def test_choice_switch_to_rnn_from_config(tmp_path: Path) -> None:
    config = tmp_path / "rnn.yaml"
    config.write_text("model:\n  sequence:\n    type: rnn\n    rebias: 2.0\n", encoding="utf-8")
    settings = parse("--config", str(config))
    assert settings.model.sequence == RNNSettings(rebias=2.0)


def test_field_of_another_choice_is_rejected() -> None:
    message = settings_error("--model.sequence.type", "conv", "--model.sequence.heads", "4")
    assert "heads" in message and "model.sequence" in message


def test_unknown_choice_is_rejected() -> None:
    message = settings_error("--model.sequence.type", "lstm")
    assert "lstm" in message and "model.sequence" in message
    assert "adam" in settings_error("--training.optimiser.type", "adam")


# Settings files and precedence --------------------------------------------------------------


def test_yaml_config_is_a_partial_tree(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(
        "model:\n  hidden_size: 64\n  sequence: {heads: 2, head_size: 32}\n"
        "output:\n  wandb: off\n  keep_best: false\n",
        encoding="utf-8",
    )
    settings = parse("--config", str(config))
    assert settings.model.hidden_size == 64
    assert isinstance(settings.model.sequence, AttentionSettings)
    assert settings.model.sequence.head_size == 32
    # YAML 1.1 would read ``off`` as False, which is not a valid wandb mode.
    assert settings.output.wandb == "off"
    assert settings.output.keep_best is False
    assert settings.model.depth == 4  # from the default preset
    settings.validate()


def test_json_config_is_a_partial_tree(tmp_path: Path) -> None:
    config = tmp_path / "settings.json"
    config.write_text(
        json.dumps({"training": {"optimiser": {"type": "sgdm", "learning_rate": 0.1}}}),
        encoding="utf-8",
    )
    settings = parse("--config", str(config), "--preset", "smoke")
    assert isinstance(settings.training.optimiser, SGDMSettings)
    assert settings.training.optimiser.learning_rate == 0.1
    assert settings.model.hidden_size == 32  # from the smoke preset
    assert settings.preset == "smoke"


def test_precedence_defaults_preset_config_cli(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({"training": {"steps": 111, "valid_interval": 11}, "model": {"depth": 3}}),
        encoding="utf-8",
    )
    settings = parse("--preset", "smoke", "--config", str(config), "--training.steps", "222")
    assert settings.training.steps == 222  # CLI beats config
    assert settings.training.valid_interval == 11  # config beats preset (32)
    assert settings.model.depth == 3  # config beats preset (2)
    assert settings.model.hidden_size == 32  # preset beats default (128)
    assert settings.training.loss_scale == 1.0  # default, set by nobody
    assert settings.training.batch_sequences == 4  # preset


def test_preset_selection_and_unknown_preset() -> None:
    smoke = parse("--preset", "smoke")
    assert smoke.preset == "smoke"
    assert smoke.model.hidden_size == 32 and smoke.training.steps == 64
    message = settings_error("--preset", "huge")
    assert "huge" in message and "smoke" in message


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        cli.parse(["--config", str(tmp_path / "nope.yaml")])
    broken = tmp_path / "broken.json"
    broken.write_text("{model: ", encoding="utf-8")
    assert "broken.json" in settings_error("--config", str(broken))
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n", encoding="utf-8")
    assert "mapping" in settings_error("--config", str(listing))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("training:\n  stepz: 3\n", encoding="utf-8")
    assert "stepz" in settings_error("--config", str(unknown))


# Rejected input -----------------------------------------------------------------------------


def test_unknown_key_names_the_key() -> None:
    message = settings_error("--model.hidden_sise", "256")
    assert "hidden_sise" in message and "model" in message
    assert "bogus" in settings_error("--bogus", "1")
    assert "learnin_rate" in settings_error("--training.optimiser.learnin_rate", "0.1")


def test_unknown_key_lists_the_fields_that_exist() -> None:
    message = settings_error("--model.hidden_sise", "256")
    assert message.startswith("`model`: unknown key 'hidden_sise' (expected one of ")
    assert "hidden_size" in message.split("expected one of")[1]
    choice = settings_error("--model.sequence.type", "conv", "--model.sequence.heads", "4")
    assert "`model.sequence`: unknown key 'heads'" in choice and "kernel_size" in choice
    option = settings_error("--bogus", "1")
    assert "'--bogus'" in option and "--preset" in option and "seed" in option


def test_booleans_and_nulls_are_not_numbers() -> None:
    # draccus alone would read true as 1 step and keep null as steps=None.
    assert "`training.steps`: expected an integer, got the boolean true" in settings_error(
        "--training.steps", "true"
    )
    assert "`training.loss_scale`: expected a number, got the boolean false" in settings_error(
        "--training.loss_scale", "false"
    )
    assert "`training.steps`: must not be null" in settings_error("--training.steps", "null")
    assert "`metadata.tags.1`: must not be null" in settings_error("--metadata.tags", "[a, null]")
    assert "`data`: expected a mapping" in settings_error("--data", "5")
    assert parse("--seed", "null").seed is None and parse("--data.path", "null").data.path is None


def test_decode_errors_are_one_line() -> None:
    message = settings_error("--seed", "abc")  # draccus reports unions over several lines
    assert "\n" not in message and "seed" in message and "abc" in message


def test_wrong_type_names_the_path() -> None:
    message = settings_error("--model.hidden_size", "abc")
    assert "model.hidden_size" in message and "abc" in message
    assert "training.steps" in settings_error("--training.steps", "1.5")
    assert "output.wandb" in settings_error("--output.wandb", "sometimes")


def test_malformed_arguments() -> None:
    assert "needs a value" in settings_error("--model.hidden_size")
    assert "positional" in settings_error("positional")
    assert "bad settings path" in settings_error("--model..hidden_size", "3")
    assert "goes through a value" in settings_error("--model.depth", "3", "--model.depth.x", "4")


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--model.sequence.heads", "3"], "heads x head_size"),
        (["--model.hidden_size", "100"], "hidden_size=100"),
        (["--model.sequence.type", "conv", "--model.sequence.groups", "5"], "groups=5"),
        (["--data.overlap_length", "256"], "overlap_length"),
        (["--data.sequence_length", "64", "--data.overlap_length", "64"], "overlap_length"),
        (["--training.steps", "-1"], "training.steps"),
        (["--training.optimiser.learning_rate", "-1"], "learning_rate"),
        (["--seed", "-3"], "seed"),
        (
            ["--model.scaling.type", "unit", "--model.residual.weighting", "plain"],
            "model.scaling.type=unit needs model.residual.weighting fixed or mean",
        ),
    ],
)
def test_impossible_values_fail_validation(argv: list[str], fragment: str) -> None:
    settings = parse(*argv)  # a well-formed tree ...
    with pytest.raises(ValueError) as info:
        settings.validate()  # ... that cannot be built
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "argv,spelling",
    [
        (["--unit_scale", "true"], "--model.scaling.type unit"),
        (["--calibrate_weight_gradients", "false"], "--model.scaling.calibrate"),
        (["--training.weights", "stochastic"], "--model.weights"),
    ],
)
def test_moved_settings_name_their_new_spelling(argv: list[str], spelling: str) -> None:
    message = settings_error(*argv)
    assert "was replaced" in message and spelling in message, message


def test_old_run_settings_are_migrated_on_resume(tmp_path: Path) -> None:
    """A settings.json written before the scheme moved into the model still resumes."""
    old = to_dict(parse("--model.residual.weighting", "mean"))
    old["unit_scale"] = True
    old["calibrate_weight_gradients"] = False
    old["training"]["weights"] = "rounded"
    del old["model"]["scaling"], old["model"]["weights"]
    (tmp_path / "settings.json").write_text(json.dumps(old), encoding="utf-8")
    invocation = cli.parse(["--resume", str(tmp_path)])
    assert invocation is not None
    model = invocation.settings.model
    assert model.scaling == UnitScalingSettings(calibrate=False)
    assert model.weights == "rounded"


def test_missing_data_folder_fails_validation(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-data"
    with pytest.raises(FileNotFoundError, match="no-such-data"):
        parse("--data.path", str(missing)).validate()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "train.txt").write_text("abc", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="valid.txt, test.txt"):
        parse("--data.path", str(partial)).validate()


# Round trip and help ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_settings_round_trip_through_json(name: str) -> None:
    settings = parse("--preset", name, "--model.sequence.type", "conv")
    assert from_dict(json.loads(json.dumps(to_dict(settings)))) == settings


def test_analyse_flag_sets_output_analyse() -> None:
    def analyse(argv: list[str]) -> str:
        invocation = cli.parse(argv)
        assert invocation is not None
        return invocation.settings.output.analyse

    assert analyse([]) == "off"
    assert analyse(["--analyse"]) == "init"
    # An explicit, stronger setting wins over the shorthand.
    assert analyse(["--analyse", "--output.analyse", "validation"]) == "validation"
    with pytest.raises(SettingsError, match="output.analyse"):
        cli.parse(["--output.analyse", "sometimes"])


def test_help_lists_every_settings_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.parse(["--help"]) is None
    out = capsys.readouterr().out
    for flag in (
        "--preset",
        "--config",
        "--out",
        "--resume",
        "--seed",
        "--data.path",
        "--model.hidden_size",
        "--model.residual.norm",
        "--model.sequence.type",
        "--model.sequence.groups",
        "--model.token.multiple",
        "--training.steps",
        "--training.optimiser.learning_rate",
        "--training.optimiser.momentum",
        "--execution.xla",
        "--output.wandb",
        "--metadata.tags",
        "--analyse",
        "--output.analyse",
    ):
        assert flag in out, flag
    for name in presets.PRESETS:
        assert name in out
    # draccus' per-section config-file flags are not options of this command line.
    assert "Config file for" not in out and "config_path" not in out
    assert main(["--help"]) == 0


# --help: every field with its type, default (what a plain run uses) and help ----------------

HELP_ENTRY = re.compile(r"^( *)(--[\w.]+) (.+?)  default: (.*)$")
HELP_CHOICE = re.compile(r"^ +\[(\w+)\] ")
POWER_OF_TWO = re.compile(r" \(2\^-?\d+\)$")


@dataclasses.dataclass
class HelpEntry:
    """One ``--flag TYPE  default: VALUE`` block of the help and the help lines under it."""

    flag: str
    kind: str
    default: str
    choice: Optional[str]  # the [choice] heading it is listed under, if any
    help: list[str] = dataclasses.field(default_factory=list)


def help_entries(text: str) -> list[HelpEntry]:
    """The settings entries of ``--help``, in order."""
    entries: list[HelpEntry] = []
    choice: Optional[str] = None
    indent = 0
    for line in text.splitlines():
        if entry := HELP_ENTRY.match(line):
            indent = len(entry.group(1))
            flag, kind, default = entry.group(2, 3, 4)
            entries.append(HelpEntry(flag, kind, default, choice))
        elif heading := HELP_CHOICE.match(line):
            choice, indent = heading.group(1), 10**6  # a heading ends the entry above it
        elif line and not line.startswith(" "):
            choice, indent = None, 10**6  # a section heading
        elif entries and line.startswith(" " * (indent + 1)):
            entries[-1].help.append(line.strip())
    return entries


def settings_leaves(
    cls: Any,
    path: tuple[str, ...] = (),
    only: Optional[set[str]] = None,
    skip: frozenset[str] = frozenset(),
) -> list[tuple[str, Optional[str]]]:
    """(dotted path, choice) of every field a command line can set, walked from the dataclasses
    (every choice's fields included; ``type`` for each choice node). A section every choice
    has (declared on the choice base: the optimiser's schedule) is walked once, as --help
    lists it; ``only``/``skip`` name the fields walked/left out."""
    leaves: list[tuple[str, Optional[str]]] = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init or (not path and field.name == "preset"):  # --preset: a run option
            continue
        if field.name in skip or (only is not None and field.name not in only):
            continue
        hint, here = hints[field.name], (*path, field.name)
        if is_choice_type(hint):
            leaves.append((".".join((*here, "type")), None))
            base_hints = typing.get_type_hints(hint)
            shared = {
                f.name
                for f in dataclasses.fields(hint)
                if dataclasses.is_dataclass(base_hints[f.name])
            }
            for name, choice in hint.get_known_choices().items():
                own = settings_leaves(choice, here, skip=frozenset(shared))
                leaves.extend((leaf, name) for leaf, _ in own)
            leaves.extend(settings_leaves(hint, here, only=shared))
        elif dataclasses.is_dataclass(hint):
            leaves.extend(settings_leaves(hint, here))
        else:
            leaves.append((".".join(here), None))
    return leaves


def help_output(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.parse([*argv, "--help"]) is None
    return capsys.readouterr().out


def test_help_gives_every_field_a_type_a_default_and_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entries = help_entries(help_output(capsys))
    listed = {(e.flag, e.choice) for e in entries}
    leaves = settings_leaves(ExperimentSettings)
    assert len(leaves) > 60  # the walk saw the whole tree
    missing = [leaf for leaf in leaves if (f"--{leaf[0]}", leaf[1]) not in listed]
    assert not missing, f"fields missing from --help: {missing}"
    assert len(entries) == len(leaves), "an entry --help lists is not a settings field"
    undocumented = [(e.flag, e.choice) for e in entries if not " ".join(e.help).strip()]
    assert not undocumented, f"fields without help: {undocumented}"
    for entry in entries:
        assert entry.kind and entry.default and entry.default != "None", entry


def test_help_shows_each_choice_nodes_default_and_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entries = {e.flag: e for e in help_entries(help_output(capsys)) if e.flag.endswith(".type")}
    assert {flag: (e.kind, e.default) for flag, e in entries.items()} == {
        "--model.sequence.type": ("{attention,conv,rnn}", "attention"),
        "--model.token.type": ("{ffn,none}", "ffn"),
        "--model.scaling.type": ("{regular,unit,umup}", "regular"),
        "--training.optimiser.type": ("{adamw,sgdm}", "adamw"),
        "--training.optimiser.schedule.type": ("{exponential,warmup_power,cosine}", "exponential"),
    }
    # Another preset's choice is that preset's default.
    paper_rnn = help_entries(help_output(capsys, "--preset", "paper-rnn"))
    assert next(e for e in paper_rnn if e.flag == "--model.sequence.type").default == "rnn"


def shown_value(entry: HelpEntry) -> Any:
    """The default an entry shows, read back as a command-line value."""
    return overrides.parse_value(POWER_OF_TWO.sub("", entry.default))


@pytest.mark.parametrize("preset", ["default", "paper-conv"])
def test_help_defaults_are_what_a_run_with_the_preset_uses(
    preset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = help_entries(help_output(capsys, "--preset", preset))
    assert len(entries) > 60
    resolved = to_dict(parse("--preset", preset))
    for entry in entries:
        *parents, name = entry.flag[2:].split(".")
        node: Any = resolved
        for part in parents:
            node = node[part]
        if entry.choice is not None and entry.choice != node["type"]:
            # Another choice's fields: switching to it resets the node to its own defaults.
            node = to_dict(parse("--preset", preset, f"--{'.'.join(parents)}.type", entry.choice))
            for part in parents:
                node = node[part]
        expected, shown = node[name], shown_value(entry)
        if isinstance(expected, float):
            shown = float(shown)
        assert shown == expected, (entry.flag, entry.choice, entry.default, expected)


def test_help_shows_the_default_presets_values_not_the_dataclasses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entries = {(e.flag, e.choice): e for e in help_entries(help_output(capsys))}
    assert entries[("--training.steps", None)].default == "2000"  # the dataclass says 4096
    assert entries[("--model.depth", None)].default == "4"  # the dataclass says 8
    assert entries[("--model.residual.weighting", None)].default == "mean"
    rates = [("--training.optimiser.learning_rate", c) for c in ("adamw", "sgdm")]
    assert [entries[key].default for key in rates] == ["0.001953125 (2^-9)", "0.0009765625 (2^-10)"]
    assert entries[("--data.path", None)].default == "null"


def test_data_path_null_is_the_embedded_corpus() -> None:
    # The paper presets name a WikiText-103 folder; null on the command line drops it.
    settings = parse("--preset", "paper-attention", "--data.path", "null")
    assert settings.data.path is None
    settings.validate()  # no folder is looked for
    assert parse("--data.path=null").data.path is None


# Presets ------------------------------------------------------------------------------------


def test_every_preset_resolves_and_validates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_grammar_folder(data, train_chars=2000, eval_chars=500)
    for name in presets.PRESETS:
        settings = parse("--preset", name)
        assert settings.preset == name
        if settings.data.path is not None:
            assert name.startswith("paper-")
            assert settings.data.path == "data/wikitext-103"
            settings.data.path = str(data)  # the real folder is prepared separately
        settings.validate()


@pytest.mark.parametrize(
    "name", ["paper-attention", "paper-attention-post", "paper-conv", "paper-rnn"]
)
def test_paper_presets_carry_the_papers_values(name: str, tmp_path: Path) -> None:
    settings = parse("--preset", name)
    assert settings.data.path == "data/wikitext-103"
    assert settings.data.sequence_length == 256
    assert settings.data.overlap_length == 32
    model = settings.model
    assert model.hidden_size == 128
    assert model.depth == (2 if name == "paper-rnn" else 8)
    assert model.residual.weighting == "mean"
    assert model.residual.norm == ("post" if name == "paper-attention-post" else "pre")
    assert model.dtype == "float32"
    sequence = model.sequence
    if name.startswith("paper-attention"):
        assert sequence == AttentionSettings(
            heads=2, head_size=64, frequencies=128, max_period=1024.0
        )
    elif name == "paper-conv":
        assert sequence == ConvSettings(kernel_size=7, groups=8)
    else:
        assert isinstance(sequence, RNNSettings)
    training = settings.training
    assert training.batch_sequences == 8
    assert training.steps == 2**19
    assert training.valid_interval == 2**14
    optimiser = training.optimiser
    assert isinstance(optimiser, AdamWSettings)
    assert optimiser.learning_rate_decay == 2**-16
    assert optimiser.learning_rate == 2**-10
    assert (optimiser.beta1, optimiser.beta2, optimiser.weight_decay) == (0.9, 0.999, 0.0)
    assert training.loss_scale == 1.0
    # Everything but the data folder (prepared separately, absent here) is buildable.
    data = tmp_path / "wikitext-103"
    write_grammar_folder(data, train_chars=2000, eval_chars=500)
    settings.data.path = str(data)
    settings.validate()


def test_presets_are_copies() -> None:
    first = presets.preset("smoke")
    first["model"]["hidden_size"] = 9999
    assert presets.preset("smoke")["model"]["hidden_size"] == 32
    with pytest.raises(KeyError, match="unknown preset"):
        presets.preset("nope")


# main(): bad input is one line on stderr and exit code 2 ------------------------------------


@pytest.fixture(name="cache_env")
def fixture_cache_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$SCMM_CACHE in a temporary folder; the runner module imported up front (its import
    prints TensorFlow start-up noise that is not part of what is checked)."""
    import scmm.experiments.runner  # pylint: disable=unused-import

    monkeypatch.setenv("SCMM_CACHE", str(tmp_path_factory.mktemp("scmm-cache")))
    monkeypatch.delenv("WANDB_MODE", raising=False)


def assert_one_error_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.usefixtures("cache_env")
@pytest.mark.parametrize(
    "argv,fragments",
    [
        (["--model.hidden_sise", "64"], ["hidden_sise"]),
        (["--model.hidden_size", "abc"], ["model.hidden_size", "abc"]),
        (["--model.sequence.type", "lstm"], ["lstm"]),
        (["--preset", "huge"], ["huge"]),
        (["--model.sequence.heads", "3"], ["heads x head_size"]),
        (["--model.sequence.type", "conv", "--model.sequence.groups", "3"], ["groups=3"]),
        (["--data.overlap_length", "300"], ["overlap_length"]),
        (["--data.path", "/nonexistent/scmm-data"], ["/nonexistent/scmm-data"]),
        (["--config", "/nonexistent/scmm.yaml"], ["/nonexistent/scmm.yaml"]),
        (["--resume", "/nonexistent/scmm-run"], ["/nonexistent/scmm-run"]),
        (["stray"], ["stray"]),
    ],
)
def test_main_bad_input_is_one_line_and_exit_2(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), "--output.wandb", "off"]) == 2
    assert_one_error_line(capsys, *fragments)
    assert not out.exists()  # nothing was written


@pytest.mark.usefixtures("cache_env")
def test_main_character_outside_vocab(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    texts = write_grammar_folder(data, train_chars=3000, eval_chars=600)
    # A vocab.json that covers train/test but lacks one character that valid.txt uses.
    (data / "valid.txt").write_text(texts["valid"] + "Zebra!\n", encoding="utf-8")
    vocab = sorted(set(texts["train"]) | set(texts["test"]) | set("ebra!\n"))
    assert "Z" not in vocab
    (data / "vocab.json").write_text(json.dumps({"chars": vocab}), encoding="utf-8")
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--data.path", str(data), "--out", str(out)]
    assert main([*argv, "--output.wandb", "off"]) == 2
    line = assert_one_error_line(capsys, "'Z'", "valid")
    assert "vocab" in line
    assert not (out / "checkpoints").exists()


@pytest.mark.usefixtures("cache_env")
def test_main_refuses_to_overwrite_a_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stored = to_dict(parse("--preset", "smoke"))
    (out / "settings.json").write_text(json.dumps(stored), encoding="utf-8")
    before = (out / "settings.json").read_text(encoding="utf-8")
    assert main(["--preset", "smoke", "--out", str(out), "--output.wandb", "off"]) == 2
    assert_one_error_line(capsys, str(out), "--resume")
    assert (out / "settings.json").read_text(encoding="utf-8") == before
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]


@pytest.mark.usefixtures("cache_env")
def test_main_resume_only_allows_steps_and_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stored = to_dict(parse("--preset", "smoke", "--seed", "3"))
    (out / "settings.json").write_text(json.dumps(stored), encoding="utf-8")
    assert main(["--resume", str(out), "--model.hidden_size", "64"]) == 2
    assert_one_error_line(capsys, "model.hidden_size", "resum")
    assert main(["--resume", str(out), "--preset", "smoke"]) == 2
    assert_one_error_line(capsys, "--preset")
    assert main(["--resume", str(out), "--out", str(tmp_path / "elsewhere")]) == 2
    assert_one_error_line(capsys, "--out")
    # Allowed overrides resolve against the stored settings.
    invocation = cli.parse(
        ["--resume", str(out), "--training.steps", "128", "--output.wandb", "off"]
    )
    assert invocation is not None
    assert invocation.resume == str(out) and invocation.out == str(out)
    assert invocation.settings.training.steps == 128
    assert invocation.settings.output.wandb == "off"
    assert invocation.settings.seed == 3
    assert invocation.settings.model == from_dict(stored).model


# Issue 13 item 7: the list of bad inputs, each one line and exit 2 before any compute --------


@pytest.mark.usefixtures("cache_env")
@pytest.mark.parametrize(
    "argv,fragments",
    [
        (
            ["--training.optimiser.learning_rate", "inf"],
            ["training.optimiser.learning_rate", "inf"],
        ),
        (["--training.loss_scale", "inf"], ["training.loss_scale", "finite", "inf"]),
        (["--training.loss_scale", ".inf"], ["training.loss_scale", "inf"]),
        (["--training.loss_scale", "1e400"], ["training.loss_scale", "inf"]),
        (["--training.optimiser.learning_rate", "nan"], ["learning_rate", "nan"]),
        (["--model.sequence.max_period", "nan"], ["model.sequence.max_period", "nan"]),
        (["--model.residual.alpha", "-inf"], ["model.residual.alpha", "-inf"]),
        (["--training.optimiser.learning_rate", "0"], ["learning_rate must be > 0", "got 0"]),
        (["--training.optimiser.weight_decay", "-0.1"], ["weight_decay must be >= 0"]),
        (["--training.optimiser.beta2", "1"], ["beta2 must be in [0, 1)", "got 1"]),
        (["--training.optimiser.epsilon", "0"], ["epsilon must be > 0"]),
        (["--training.loss_scale", "0"], ["training.loss_scale must be > 0"]),
        (["--training.divergence_loss", "1"], ["training.divergence_loss must be > 1"]),
        (["--output.progress_interval", "-1"], ["output.progress_interval", "-1"]),
    ],
)
def test_main_non_finite_and_meaningless_numbers_are_bad_input(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``inf`` and ``nan`` in any spelling, and numbers outside a field's meaning: one line
    naming the field and the value, exit 2, nothing written."""
    out = tmp_path / "run"
    assert main(["--preset", "smoke", *argv, "--out", str(out), "--output.wandb", "off"]) == 2
    assert_one_error_line(capsys, *fragments)
    assert not out.exists()


def test_divergence_limit_can_be_switched_off() -> None:
    """null, not inf, turns the explosion limit off (inf is refused like everywhere)."""
    assert parse("--training.divergence_loss", "null").training.divergence_loss is None
    assert parse().training.divergence_loss == 10.0


def test_settings_built_in_python_meet_the_same_finite_rule() -> None:
    """validate() applies the decoder's finite rule to settings that were never decoded."""
    settings = ExperimentSettings()
    settings.model.sequence = AttentionSettings(max_period=float("inf"))
    with pytest.raises(ValueError, match="`model.sequence.max_period`: must be a finite number"):
        settings.validate()


def test_sweep_values_go_through_the_finite_rule() -> None:
    """A sweep's overrides and axis values are decoded by the same strict decoder."""
    with pytest.raises(SettingsError, match=r"s.yaml: `overrides.training.loss_scale`: .*inf"):
        definition_from_dict({"overrides": {"training.loss_scale": float("inf")}}, "s.yaml")
    definition = definition_from_dict(
        {"axes": {"lr": {"huge": {"training.optimiser.learning_rate": "inf"}}}}, "s.yaml"
    )
    with pytest.raises(SettingsError, match="configuration lr=huge: .*learning_rate.*finite"):
        expand(definition)


@pytest.mark.usefixtures("cache_env")
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_main_short_split_is_bad_input_before_training(
    split: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An empty valid.txt used to train a whole validation interval and then fail; now it is
    bad input naming the split and its file, and no run folder is made."""
    data = tmp_path / "data"
    write_grammar_folder(data, train_chars=3000, eval_chars=600)
    (data / f"{split}.txt").write_text("", encoding="utf-8")
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--data.path", str(data), "--out", str(out)]
    assert main([*argv, "--output.wandb", "off"]) == 2
    assert_one_error_line(capsys, f"{split} split ({data / f'{split}.txt'}) has 0 characters")
    assert not out.exists()
