-- Deterministic pseudo-random non-negative int from a seed string; IMMUTABLE SQL so it inlines.
CREATE FUNCTION fd_rand(seed text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ('x' || substr(md5(seed), 1, 8))::bit(32)::integer & 2147483647 $$;

CREATE TABLE teams (
    id          integer PRIMARY KEY,
    name        text NOT NULL,
    short_name  text NOT NULL,
    country     text NOT NULL,
    founded     integer NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE players (
    id            integer PRIMARY KEY,
    team_id       integer NOT NULL REFERENCES teams(id),
    full_name     text NOT NULL,
    position      text NOT NULL CHECK (position IN ('GK', 'DF', 'MF', 'FW')),
    shirt_number  integer NOT NULL,
    birth_date    date NOT NULL
);
CREATE INDEX players_team_id_idx ON players (team_id);

CREATE TABLE users (
    id                bigint PRIMARY KEY,
    email             text NOT NULL UNIQUE,
    display_name      text NOT NULL,
    favorite_team_id  integer REFERENCES teams(id),
    created_at        timestamptz NOT NULL,
    last_seen_at      timestamptz,
    settings          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX users_favorite_team_id_idx ON users (favorite_team_id);

CREATE TABLE matches (
    id            bigint PRIMARY KEY,
    home_team_id  integer NOT NULL REFERENCES teams(id),
    away_team_id  integer NOT NULL REFERENCES teams(id),
    kickoff_at    timestamptz NOT NULL,
    status        text NOT NULL,
    home_score    integer,
    away_score    integer,
    venue         text NOT NULL,
    updated_at    timestamptz NOT NULL,
    CHECK (home_team_id <> away_team_id)
);
CREATE INDEX matches_kickoff_at_idx ON matches (kickoff_at);

CREATE TABLE match_events (
    id         bigint PRIMARY KEY,
    match_id   bigint NOT NULL REFERENCES matches(id) ON DELETE CASCADE,
    player_id  integer REFERENCES players(id),
    minute     integer NOT NULL,
    kind       text NOT NULL,
    detail     text
);
CREATE INDEX match_events_match_id_idx ON match_events (match_id);

CREATE TABLE notifications (
    id          bigint PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    match_id    bigint REFERENCES matches(id) ON DELETE SET NULL,
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    read_at     timestamptz
);
CREATE INDEX notifications_user_id_created_at_idx ON notifications (user_id, created_at);
CREATE INDEX notifications_match_id_idx ON notifications (match_id);
