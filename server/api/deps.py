"""Named dependencies, so a handler's signature says what it needs."""

from typing import Annotated

from fastapi import Depends

from prunescope.server.config import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]
