from engram_cli.cli.app import run

run()
