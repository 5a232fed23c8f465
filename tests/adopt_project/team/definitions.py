from pathlib import Path

import dagster as dg

import assets
import resources


@dg.definitions
def defs() -> dg.Definitions:
    ours = dg.Definitions(assets=[assets.numbers], jobs=[assets.numbers_job],
                          resources={"greeting": resources.Greeting(text="hello from the team")})
    return dg.Definitions.merge(dg.load_from_defs_folder(path_within_project=Path(__file__).parent), ours)
