"""The write-ahead log: the source of truth for everything engramd stores."""
