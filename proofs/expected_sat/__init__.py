"""Deliberately wrong or historical encodings, each asserted to give a counterexample (style.md
lesson 11; Alive's known-wrong examples), beside the fixed variant that must prove: they show the
harness catches the bugs the theorems are about. See ``mutants.MUTANTS`` and ``FIXED``."""
