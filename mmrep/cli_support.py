"""The one front door of every `mmrep` command (and of the thin entry scripts that call them).

    p = CommandParser("mmrep quantize", "RQ + VQ codes", sections={"quantize": QuantizeConfig})
    p.add_argument("--emb", required=True)
    call = p.invoke(argv)                  # --config FILE and --section.key=value split off, flags parsed
    run = call.build(QuantizeRun, flags={"quantize.levels": call.args.levels})   # file < overrides < flags

Every command's `--help` then shows `--config FILE` and the `--section.KEY=VALUE` override form with the
keys of each section, and every command reads them the same way (`mmrep.config.split_config_args`).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from mmrep import config as cfgmod
from mmrep.errors import MmrepError

CONFIG_HELP = "default"  # a YAML file holding the command's sections (the help names them)


@dataclass
class Invocation:
    """What one command line asked for: the parsed flags, the config file and the overrides."""

    args: argparse.Namespace
    config: str | None = None
    overrides: list[str] = field(default_factory=list)

    def build(self, cls: type, flags: Mapping[str, Any] | None = None, section: str | None = None) -> Any:
        """The typed config: file < `--a.b=v` overrides < explicit flags (dotted keys; None = not given).

        With `section`, `cls` is that one section's dataclass and only that section of the file is read
        (a whole-pipeline file holds other stages' sections too); otherwise `cls` is the whole file."""
        raw: dict[str, Any] = cfgmod.read_yaml(self.config) if self.config else {}
        if section is not None:
            raw = {section: dict(raw[section]) if isinstance(raw.get(section), dict) else {}}
        for item in self.overrides:
            key, value = cfgmod.parse_override(item)
            if section is not None and not key.startswith(section + "."):
                raise MmrepError(f"override {item!r} must start with --{section}.")
            cfgmod.set_dotted(raw, key, value)
        for key, value in (flags or {}).items():
            if value is not None:
                cfgmod.set_dotted(raw, key, value)
        if section is not None:
            return cfgmod.from_dict(cls, raw[section], section)
        return cfgmod.from_dict(cls, raw)


class CommandParser(argparse.ArgumentParser):
    """argparse for one command, with the config front door built in.

    sections: the config sections the command reads (name -> dataclass, listed with their keys in the
    help); top_level: undotted keys that are overrides too (`--output_dir=x`); config_help: what
    `--config FILE` is (None: the command takes no config file; config_note=False: it is not an mmrep
    command config); overrides_help: replaces the generated override text (commands whose overrides
    are not config sections, e.g. `mmrep sweep`)."""

    def __init__(self, prog: str, description: str = "", *, sections: Mapping[str, type] | None = None,
                 top_level: Sequence[str] = (), config_help: str | None = CONFIG_HELP,
                 overrides_help: str | None = None, config_note: bool = True, **kwargs: Any):
        super().__init__(prog=prog, description=description, **kwargs)
        self.sections = dict(sections or {})
        self.top_level = tuple(top_level)
        self.takes_config = config_help is not None
        self.takes_overrides = bool(self.sections or self.top_level or overrides_help)
        if not (self.takes_config or self.takes_overrides):  # said in the help, so nobody looks for them
            self.add_argument_group("config", "This command takes no --config file and no --section.KEY=VALUE "
                                              "overrides: its flags are all it reads.")
            return
        text = overrides_help or self._overrides_text()
        group = self.add_argument_group("config", text if self.takes_config else text + " This command takes no "
                                        "--config file.")
        if self.takes_config:
            if config_help == CONFIG_HELP:
                names = ", ".join(f"`{s}:`" for s in self.sections)
                config_help = (f"YAML config file with the {names} section{'s' if len(self.sections) > 1 else ''}"
                               if names else "YAML config file")
            note = " (`_base_: other.yaml` merges another file first; `mmrep configs list` shows the packaged configs)"
            group.add_argument("--config", metavar="FILE", help=config_help + (note if config_note else ""))

    def _overrides_text(self) -> str:
        if not self.sections and not self.top_level:
            return "This command takes no --section.KEY=VALUE overrides."
        parts = []
        if self.sections:
            first = next(iter(self.sections))
            parts.append(f"Settings: {'--config FILE, then ' if self.takes_config else ''}"
                         f"--SECTION.KEY=VALUE overrides (values are YAML, e.g. --{first}.KEY=[1,2]; a bare "
                         f"--{first}.KEY means true), then the flags above.")
            for name, cls in self.sections.items():
                if dataclasses.is_dataclass(cls):
                    parts.append(f"{name} keys: " + ", ".join(f.name for f in dataclasses.fields(cls) if f.init) + ".")
        if self.top_level:
            parts.append("Top-level keys take --KEY=VALUE too: " + ", ".join(self.top_level) + ".")
        return " ".join(parts)

    def invoke(self, argv: Sequence[str]) -> Invocation:
        """Split off `--config FILE` and the overrides, parse the rest (`--help` prints and exits 0 here)."""
        if not (self.takes_config or self.takes_overrides):
            return Invocation(self.parse_args(list(argv)))
        config, overrides, rest = cfgmod.split_config_args(argv, self.top_level)
        remaining = []
        for arg in rest:  # a bare `--top_level_key` (a boolean) is an override too
            key = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
            (overrides if key in self.top_level else remaining).append(arg)
        args = self.parse_args(remaining)
        if config is not None and not self.takes_config:
            raise MmrepError(f"{self.prog} takes no --config file")
        if overrides and self.sections:
            allowed = (*self.sections, *self.top_level)
            for item in overrides:
                head = cfgmod.parse_override(item)[0].split(".", 1)[0]
                if head not in allowed:
                    raise MmrepError(f"override {item!r}: {self.prog} settings live under "
                                     + ", ".join(f"--{s}." for s in self.sections)
                                     + (f" or are top-level ({', '.join(self.top_level)})" if self.top_level else ""))
        elif overrides and not self.takes_overrides:
            raise MmrepError(f"{self.prog} takes no --section.key=value overrides (got {overrides[0]!r})")
        return Invocation(args, config, overrides)


def override_args(section: str, cfg: Any) -> list[str]:
    """`--section.key=value` for every key of the dataclass `cfg` that differs from its default, so that
    `invoke(...).build(type(cfg), section=section)` gives `cfg` back (what a printed command needs)."""
    import yaml

    default = type(cfg)()
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.init and value != getattr(default, f.name):
            plain = cfgmod.to_dict(value) if dataclasses.is_dataclass(value) else value
            if isinstance(plain, tuple):
                plain = list(plain)
            text = yaml.safe_dump(plain, default_flow_style=True, width=1 << 30).strip()
            out.append(f"--{section}.{f.name}={text.removesuffix(chr(10) + '...').strip()}")
    return out


def command_line(route: str, *positionals: Any, flags: Mapping[str, Any] | None = None,
                 sections: Mapping[str, Any] | None = None) -> list[str]:
    """The argv of `mmrep ROUTE ...` that asks for these values: flags as `--name value` (True: a bare
    `--name`; None / False / "": left out; a list: the flag repeated), then each config section's
    non-default keys as overrides. Stage jobs use it to print the command that reruns them alone."""
    argv = [*route.split(), *(str(p) for p in positionals)]
    for name, value in (flags or {}).items():
        if value is None or value is False or value == "":
            continue
        if value is True:
            argv.append(f"--{name}")
        elif isinstance(value, (list, tuple)):
            for v in value:
                argv += [f"--{name}", str(v)]
        else:
            argv += [f"--{name}", str(value)]
    for section, cfg in (sections or {}).items():
        argv += override_args(section, cfg)
    return argv


def shell(argv: Sequence[str]) -> str:
    """`mmrep ARGV`, quoted for a POSIX shell."""
    import shlex

    return "mmrep " + " ".join(shlex.quote(str(a)) for a in argv)
