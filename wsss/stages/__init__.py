"""Stage runners: iterate images, workers, resume, manifest, quality table. No algorithm code lives here."""
