"""The check: the tracker takes a baseline, follows the phases, and classifies what
did not come back into findings."""
