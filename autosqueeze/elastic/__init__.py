"""The elastic student: one weight-shared network whose sub-networks are sliced, not trained, per trial."""
from .store import ElasticStudent, ElasticStudentMissing, get_elastic_student, student_state
from .subnet import Subnet, SubnetSpace, activate, elastic_mode, even_layers, slice_subnet
from .train import ElasticSettings, train_elastic

__all__ = ["ElasticSettings", "ElasticStudent", "ElasticStudentMissing", "Subnet", "SubnetSpace", "activate",
           "elastic_mode", "even_layers", "get_elastic_student", "slice_subnet", "student_state", "train_elastic"]
