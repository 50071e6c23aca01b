"""The data lifecycle after the archive (docs/retention.md): legal holds (`holds`), the retention
job that drops what the archive holds verified and no hold keeps (`retention`), and the
de-identified research export (`research`)."""
