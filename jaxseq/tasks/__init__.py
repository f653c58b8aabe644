"""Model families behind one interface (jaxseq.tasks.base.Task), found by name in
jaxseq.tasks.registry."""

from jaxseq.tasks.registry import build_task, load_task, register, task_class

__all__ = ["build_task", "load_task", "register", "task_class"]
