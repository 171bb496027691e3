"""Everything that moves data: settings, Faust app, chain I/O, storage, supervisor, CLI."""
