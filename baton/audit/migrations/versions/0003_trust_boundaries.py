"""trust boundaries: signed chain head, one decision per gate

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

`chain_head.signature`: an HMAC of the head (seq, hash) with a key the database does not
hold, so a recomputed chain is detectable. `gate_decisions`: one row per run and gate naming
the flow run that asks it; the approval service claims its decision by compare-and-set.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('chain_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(length=64),
                                      nullable=False, server_default=''))
    op.create_table('gate_decisions',
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('gate', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('flow_run_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('opened_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('approval_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('run_id', 'gate')
    )


def downgrade() -> None:
    op.drop_table('gate_decisions')
    with op.batch_alter_table('chain_head', schema=None) as batch_op:
        batch_op.drop_column('signature')
