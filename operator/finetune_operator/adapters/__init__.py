"""ModelAdapters: verifying stored artifacts and whether serving stacks can load them."""
