"""What a view computes, as DataFrame -> DataFrame functions shared by the speed and batch layers."""
