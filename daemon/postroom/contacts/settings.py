"""`[contacts]`: the mailing lists contacts can be on (declared here, owned by the operator)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from postroom.contacts.model import MailingList


class MailingListSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    name: str = Field(min_length=1, max_length=255)
    description: str | None = None
    public: bool = False

    def mailing_list(self) -> MailingList:
        return MailingList(self.id, self.name, self.description, self.public)


class ContactsSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    lists: tuple[MailingListSettings, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> ContactsSettings:
        ids = [item.id for item in self.lists]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"mailing lists listed twice: {', '.join(twice)}")
        return self
