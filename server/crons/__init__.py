"""Crons: schedules that create runs (LangGraph Server's `/runs/crons`), kept in Postgres, fired by workers.

`store` holds the SQL, `schedule` the pure rules (cron expressions, timezones, payload to run request),
`scheduler` the loop every worker process runs.
"""
