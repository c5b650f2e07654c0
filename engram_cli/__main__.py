from engram_cli.app import run

run()
