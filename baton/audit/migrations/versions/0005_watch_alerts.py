"""watch alerts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

The watch's open alerts (baton/watch/alerts.py): one row per domain and cause whose alert was
posted and whose recovery was not, so alert state survives a restart of the watch.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('watch_alerts',
    sa.Column('domain', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('cause', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('opened_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('evidence', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('domain', 'cause')
    )


def downgrade() -> None:
    op.drop_table('watch_alerts')
