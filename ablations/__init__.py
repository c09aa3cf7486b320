"""Grid designs over the deviation toggles, and the runner that trains and logs them."""
