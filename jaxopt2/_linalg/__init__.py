"""Shared numerical linear algebra, one method per module (as lineax does): truncated CG,
CGLS, GMRES, Lanczos, band LU and small dense factorisations, plus the inexact-Newton forcing
term. Each module's docstring says what it does that lineax does not; only re-exports here."""

from .banded import band_lu as band_lu
from .banded import band_lu_solve as band_lu_solve
from .banded import band_solver as band_solver
from .banded import probe_band as probe_band
from .cg import CGResult as CGResult
from .cg import cg_budget as cg_budget
from .cg import damped_cg as damped_cg
from .cg import truncated_cg as truncated_cg
from .cgls import CGLSResult as CGLSResult
from .cgls import cgls as cgls
from .cgls import pcgls as pcgls
from .dense import damped_cholesky as damped_cholesky
from .dense import damped_solve as damped_solve
from .dense import newton_solve as newton_solve
from .dense import ravelled_jacobian as ravelled_jacobian
from .forcing import EW_ETA_MAX as EW_ETA_MAX
from .forcing import eisenstat_walker as eisenstat_walker
from .forcing import inner_rtol as inner_rtol
from .gmres import GMRESResult as GMRESResult
from .gmres import gmres as gmres
from .lanczos import lanczos as lanczos
