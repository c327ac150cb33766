"""From a finished study to what a user looks at (plots, tables) and takes away (recipes)."""
