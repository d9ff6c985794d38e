"""Prompting: the Jinja sandbox, the task prompts, the models' chat templates, and fitting a prompt to the
context window."""
