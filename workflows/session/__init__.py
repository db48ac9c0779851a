"""The parts of the LabSession workflow, composed by `workflows.lab_session.LabSessionWorkflow`."""
