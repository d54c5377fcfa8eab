"""watch samples

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-27

The watch's periodic measurements (baton/watch): per flow and sample, the domain's aggregate
at-risk figures and readiness in columns, per-partition detail as compact JSON. Telemetry,
not evidence: not part of the hash chain, pruned and downsampled by the watch.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('watch_samples',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('domain', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('owner', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('secondary', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('resolution', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('slot', sa.BigInteger(), nullable=False),
    sa.Column('taken_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('records_at_risk', sa.Integer(), nullable=True),
    sa.Column('seconds_at_risk', sa.Float(), nullable=True),
    sa.Column('unknown_partitions', sa.Integer(), nullable=False),
    sa.Column('replication_state', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('heartbeat_age_seconds', sa.Float(), nullable=True),
    sa.Column('epoch', sa.Integer(), nullable=True),
    sa.Column('authority_state', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('lease_seconds_left', sa.Float(), nullable=True),
    sa.Column('readiness', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('domain', 'owner', 'secondary', 'resolution', 'slot', name='uq_watch_samples_slot')
    )
    with op.batch_alter_table('watch_samples', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_watch_samples_domain'), ['domain'], unique=False)
        batch_op.create_index(batch_op.f('ix_watch_samples_taken_at'), ['taken_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('watch_samples', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_watch_samples_taken_at'))
        batch_op.drop_index(batch_op.f('ix_watch_samples_domain'))
    op.drop_table('watch_samples')
