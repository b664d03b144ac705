"""Recipes: a study reproduced end to end as a chain of talelab commands, ending in its tables side by side with the
published ones. `book` reads a recipe file, `runner` runs its stages (resumable), `report` writes report.md."""
