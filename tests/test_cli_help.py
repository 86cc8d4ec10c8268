"""Every command's --help is plain text (no docstring markup) with a line for every flag: a user
learns the tools from --help, not from the source."""
from __future__ import annotations

import argparse

import pytest

from pipeline import compute, study
from pipeline.pretrain import __main__ as pretrain
from pipeline.data import __main__ as data_cli
from pipeline.transfer import cli as transfer_cli

COMMANDS = {"pipeline.study": study.build_parser, "pipeline.pretrain": pretrain.build_parser,
            "pipeline.transfer": transfer_cli.build_parser, "pipeline.data": data_cli.build_parser}


def compute_parser() -> argparse.ArgumentParser:
    """pipeline.compute builds its parser inside main: caught as main hands it the arguments."""
    class Caught(Exception):
        pass

    def catch(parser, *args, **kwargs):
        raise Caught(parser)
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch
    try:
        compute.main([])
    except Caught as caught:
        return caught.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError("pipeline.compute parsed nothing")


def parsers(parser: argparse.ArgumentParser, name: str):
    """The parser and its subcommands' parsers, with their names."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


@pytest.mark.parametrize("command", [*COMMANDS, "pipeline.compute"])
def test_help_is_plain_and_says_what_every_flag_does(command):
    top = compute_parser() if command == "pipeline.compute" else COMMANDS[command]()
    for name, parser in parsers(top, command):
        text = parser.format_help()
        assert "``" not in text, f"{name} --help shows docstring markup"
        silent = [action.option_strings or [action.dest] for action in parser._actions
                  if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
                  and not (action.help and action.help.strip())]
        assert not silent, f"{name}: flags without help: {silent}"


def test_one_name_for_the_base_learning_rate():
    """--base-lr is params.base_lr in MLflow and base_lr in study files; --lr stays as an alias."""
    parser = pretrain.build_parser()
    given = ["--model", "ViT-B/16", "--data", "d", "--steps", "1"]
    assert parser.parse_args([*given, "--base-lr", "0.1"]).base_lr == parser.parse_args([*given, "--lr", "0.1"]).base_lr
