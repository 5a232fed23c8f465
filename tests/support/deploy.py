"""The deployment files (deploy/) as the tests read them."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import yaml

from tests.paths import PROJECT_ROOT

DEPLOY: Path = PROJECT_ROOT / "deploy"


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form functions (`!Ref x` reads as `{"Ref": "x"}`)."""


CloudFormationLoader.add_multi_constructor("!", lambda loader, suffix, node: {
    suffix: loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
    else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_scalar(node)})


class Stack:
    """A CloudFormation template evaluated for given parameters, for the intrinsic functions
    deploy/ uses (Ref, Sub, If, Equals, Not, Select, Split, Join, Base64, GetAtt): what AWS
    would create, to compare with what dpe's environments expect. Not CloudFormation: no
    resources are created, GetAtt reads as '<resource>.<attribute>'."""

    NO_VALUE = object()

    def __init__(self, template: dict, parameters: dict):
        self.template = template
        self.parameters = {name: spec.get("Default") for name, spec in template.get("Parameters", {}).items()}
        self.parameters.update(parameters)
        for name, spec in template.get("Parameters", {}).items():
            value = self.parameters[name]
            assert value is not None, f"parameter {name} has no value"
            if "AllowedValues" in spec:
                assert value in spec["AllowedValues"], f"{name}: {value!r} not in {spec['AllowedValues']}"
            if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
                self.parameters[name] = value.split(",")
        self.conditions = {name: self.value(expr) for name, expr in template.get("Conditions", {}).items()}

    def resource(self, name: str) -> dict:
        return self.value(self.template["Resources"][name]["Properties"])

    def value(self, node):
        if isinstance(node, list):
            return [v for v in (self.value(item) for item in node) if v is not self.NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            function = key.removeprefix("Fn::")
            if function in ("Ref", "Sub", "If", "Equals", "Not", "Select", "Split", "Join", "Base64", "GetAtt",
                            "Condition"):
                return getattr(self, f"_{function.lower()}")(arg)
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not self.NO_VALUE}

    def _ref(self, name):
        if name == "AWS::NoValue":
            return self.NO_VALUE
        return self.parameters[name] if name in self.parameters else f"<{name}>"

    def _sub(self, arg):
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.value(arg[1]))

        def replace(match):
            name = match.group(1)
            value = variables[name] if name in variables else self._ref(name)
            return ",".join(value) if isinstance(value, list) else str(value)

        return re.sub(r"\$\{([^}!]+)\}", replace, text)

    def _if(self, arg):
        return self.value(arg[1] if self.conditions[arg[0]] else arg[2])

    def _condition(self, name):
        return self.conditions[name]

    def _equals(self, arg):
        return self.value(arg[0]) == self.value(arg[1])

    def _not(self, arg):
        return not self.value(arg[0])

    def _select(self, arg):
        return self.value(arg[1])[int(self.value(arg[0]))]

    def _split(self, arg):
        return self.value(arg[1]).split(arg[0])

    def _join(self, arg):
        return arg[0].join(str(v) for v in self.value(arg[1]))

    def _base64(self, arg):
        return base64.b64encode(self.value(arg).encode()).decode()

    def _getatt(self, arg):
        return ".".join(arg) if isinstance(arg, list) else arg
