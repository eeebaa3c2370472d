import pytest

from gptlab.config import RunConfig, build_config, field_types, load_preset, preset_names
from gptlab.errors import GptlabError
from gptlab.training.schedule import lr_at


def test_presets_load_and_validate():
    names = preset_names()
    assert {"shakespeare-char", "shakespeare-char-cpu", "tiny"} <= set(names)
    for name in names:
        cfg = load_preset(name)
        cfg.model.vocab_size = 65
        cfg.validate()


def test_nanogpt_presets_match_the_issue():
    cpu = load_preset("shakespeare-char-cpu")
    assert (cpu.model.n_layer, cpu.model.n_head, cpu.model.n_embd, cpu.model.block_size) == (4, 4, 128, 64)
    assert (cpu.train.batch_size, cpu.train.max_iters, cpu.model.dropout, cpu.train.eval_iters) == (12, 2000, 0.0, 20)
    # lr 1e-3, held until step 1600 (WSD), then a straight line down to min_lr at the last step
    assert cpu.train.learning_rate == 1e-3 and cpu.train.lr_schedule == "wsd"
    assert lr_at(100, cpu.train) == lr_at(1600, cpu.train) == 1e-3
    assert lr_at(1800, cpu.train) == pytest.approx(5.5e-4) and lr_at(2000, cpu.train) == cpu.train.min_lr == 1e-4
    gpu = load_preset("shakespeare-char")
    assert (gpu.model.n_layer, gpu.model.n_head, gpu.model.n_embd, gpu.model.block_size) == (6, 6, 384, 256)
    assert (gpu.train.batch_size, gpu.train.max_iters, gpu.model.dropout, gpu.train.beta2) == (64, 5000, 0.2, 0.99)
    assert (gpu.train.learning_rate, gpu.train.min_lr, gpu.train.warmup_iters) == (1e-3, 1e-4, 100)


def test_overrides_are_typed():
    cfg = build_config("tiny", {"n_layer": "3", "dropout": "0.1", "bias": "true", "learning_rate": "2e-3"})
    assert cfg.model.n_layer == 3 and isinstance(cfg.model.n_layer, int)
    assert cfg.model.dropout == 0.1 and cfg.model.bias is True and cfg.train.learning_rate == 2e-3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_layers": "3"}, "unknown config key 'n_layers'"),
        ({"n_layer": "three"}, "n_layer expects int"),
        ({"n_embd": "100", "n_head": "3"}, "divisible by n_head"),
        ({"dropout": "1.5"}, "dropout must be in"),
        ({"bias": "maybe"}, "expects true or false"),
    ],
)
def test_bad_overrides_say_what_is_wrong(overrides, message):
    with pytest.raises(GptlabError, match=message):
        build_config("tiny", overrides)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(GptlabError, match="shakespeare-char-cpu"):
        load_preset("no-such-preset")


def test_config_round_trips_through_json(tmp_path):
    cfg = build_config("shakespeare-char", {"seed": "7"})
    cfg.save(tmp_path / "c.json")
    assert RunConfig.load(tmp_path / "c.json") == cfg


def test_override_keys_are_unique_across_sections():
    # one flat --key namespace: a name in two sections would be ambiguous
    from dataclasses import fields

    from gptlab.config import SECTIONS

    all_names = [f.name for cls in SECTIONS.values() for f in fields(cls)]
    assert len(all_names) == len(set(all_names)) == len(field_types())
