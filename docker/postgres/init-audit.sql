-- A separate database for the orthanc-hardening audit store (Orthanc's index uses "orthanc").
CREATE DATABASE hardening_audit OWNER orthanc;
