"""Session journeys (free navigation between areas) and the MVP pillar session."""
