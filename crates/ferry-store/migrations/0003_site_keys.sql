-- A registration key may be issued for one existing site (FAB-8): only such a key adds another
-- instance of that site's manager; a key without a site only registers a new site.
ALTER TABLE registration_keys ADD COLUMN for_fabric TEXT;
