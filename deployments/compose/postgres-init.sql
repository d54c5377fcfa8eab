-- Prefect keeps its own database beside Baton's audit DB.
CREATE DATABASE prefect;
