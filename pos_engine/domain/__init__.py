"""Pure domain: money, rulebook, decisions. Standard library imports only."""
