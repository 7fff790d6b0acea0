"""One backup = snapshot + resources bundle + manifest, written so that a half backup never looks whole."""
