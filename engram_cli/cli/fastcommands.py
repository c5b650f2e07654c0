"""Which commands start without the command-line framework (:mod:`.fast`): tools/docgen.py
reads this to generate their option table (:mod:`.fasttable`)."""

HOT: tuple[tuple[str, ...], ...] = (
    ("ping",), ("send",), ("inbox",), ("wait",), ("unit", "create"), ("lock", "acquire"),
    ("lock", "release"), ("lock", "renew"), ("lock", "run"), ("hook", "pre-edit"),
    ("hook", "prompt"), ("hook", "session-start"), ("hook", "stop"),
)
