from ktrdr_collect.cli.main import entry

entry()
