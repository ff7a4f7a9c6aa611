"""Files: request lines and data rows in, result records out, the journal and resume scan,
output formats and export.

Everything burstq reads or writes on disk that a user can open lives here.
May import: config, models, errors. Never live/, batch/, money/, observe/ or mock/.
"""
