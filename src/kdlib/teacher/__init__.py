"""Teacher rationales: backends, a generation cache, prompt recipes, importers and rationale rows."""
