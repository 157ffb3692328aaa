"""The public data contract: schema and rules, validation of extracts, table files."""
