"""Commands that use a trained model: export, index/search, embed."""
