"""Publishing: `build` runs a recipe from base to a verified checkpoint; `card` writes its model card."""
