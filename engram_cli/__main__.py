from engram_cli.cli.fast import run

run()
