"""Storage layer: timeframes, market calendars, interval arithmetic, and the data stores."""
