"""Value types, errors and the clock: pure code every other package builds on."""
