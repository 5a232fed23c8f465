"""The deployment files (deploy/) as the tests read them."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.paths import PROJECT_ROOT

DEPLOY: Path = PROJECT_ROOT / "deploy"


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form functions (`!Ref x` reads as `{"Ref": "x"}`)."""


CloudFormationLoader.add_multi_constructor("!", lambda loader, suffix, node: {
    suffix: loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
    else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_scalar(node)})
