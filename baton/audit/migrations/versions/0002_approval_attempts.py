"""approval attempts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

A new chained table: every click on an approval request, accepted or refused, with the Slack
user, team, channel and whether the identity was verified. A new table rather than new columns
on `approvals`, so the hashes of rows written before this migration stay valid.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('approval_attempts',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('recorded_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('prev_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('gate', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('flow_run_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('slack_user_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('slack_user_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('slack_team_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('slack_channel_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('message_ts', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('identity_verified', sa.Boolean(), nullable=False),
    sa.Column('verified_by', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('approval_id', sa.Integer(), nullable=True),
    sa.Column('attempted_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('approval_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approval_attempts_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_approval_attempts_seq'), ['seq'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('approval_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approval_attempts_seq'))
        batch_op.drop_index(batch_op.f('ix_approval_attempts_run_id'))
    op.drop_table('approval_attempts')
