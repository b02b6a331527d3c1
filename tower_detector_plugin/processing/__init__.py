"""The Processing provider and its algorithms, one module each; they import core/, never ui/."""
