"""Task data: registry, local files, Hub, loading, metrics and the TaskData container.

The public import point is `peftlab.tasks`; these modules are its parts.
"""
