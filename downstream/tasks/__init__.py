"""One module per dataset family; each reads the dataset exactly as shipped."""
