"""Quality rules of ``data.filters``, one module a rule family; each rule maps a text to the text to
keep (possibly changed) or None to drop the document."""
